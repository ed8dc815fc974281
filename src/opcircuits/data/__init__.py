"""GSM8K loading, operation labels and sampling."""
