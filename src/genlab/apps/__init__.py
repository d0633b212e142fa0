"""Commands that use trained models: one module each (`serve`: the HTTP server and web page)."""
