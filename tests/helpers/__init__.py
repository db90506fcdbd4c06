"""Real components for the tests: a feed server, a fake of Buttondown's API and an SMTP server on loopback,
Chromium, and a newsletter folder to send from."""
