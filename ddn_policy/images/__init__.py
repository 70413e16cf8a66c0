"""DDN on images: the generator, its guides (zero-shot conditional generation), metrics."""
