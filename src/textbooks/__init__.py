"""textbooks: a reproduction of "Textbooks Are All You Need" (phi-1)."""

__version__ = "0.1.0"
