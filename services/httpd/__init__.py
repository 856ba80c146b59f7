"""httpd."""
