"""Sharing a trained model: model folders in the Hugging Face Hub layout (``hub``), their model cards
(``card``) and the local demo page (``demo``, ``demo.html``)."""
