"""digest: the week's posts from RSS/Atom feeds, as an edited email newsletter."""

__version__ = "0.1.0"
