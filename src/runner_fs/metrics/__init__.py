"""Runner metrics: where they live, how they are read, and what is pushed."""
