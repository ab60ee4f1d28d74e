"""finlora: fine-tune transformer encoders with LoRA to classify financial and legal text."""

__version__ = "0.1.0"
