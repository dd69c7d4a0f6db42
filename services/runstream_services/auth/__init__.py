"""API keys per project with read, write and admin roles."""
