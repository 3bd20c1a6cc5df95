"""CSG study harness: Associative Convolutional Layers against other compression methods."""
