"""Pictures of results: label maps as colour masks, overlays, legends and palette PNGs
(``label_maps``), and charts of scores (``charts``). Used by ``predict``, training's plots and the
model card."""
