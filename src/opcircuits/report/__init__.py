"""The report: figures (`figures`), the summary's sentences (`findings`), Markdown and HTML
(`render`, `templates/`), and the `analyze` command that computes and writes them (`analyze`)."""
