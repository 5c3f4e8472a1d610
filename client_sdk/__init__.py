"""Client SDK (see issue 4); nothing here yet."""
