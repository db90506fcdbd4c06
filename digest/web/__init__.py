"""The newsletter on the web: the static archive and its feeds (publish), and `digest serve` (app, signup)."""
