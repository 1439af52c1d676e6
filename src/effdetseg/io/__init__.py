"""What travels with a trained model, and how it is written: the model record, label sets, atomic files."""
