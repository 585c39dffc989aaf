"""Models -> samples: the decoding loop, the models an evaluation runs (own checkpoints, Hugging Face,
served), and a generation run that writes a samples file."""
