"""unyoke tests."""
