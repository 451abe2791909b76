"""Generation Analytics: record image-generation events and answer analytics questions about them."""

__version__ = "0.1.0"
