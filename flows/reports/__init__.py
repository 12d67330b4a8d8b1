"""What a flow shows people: Prefect artifacts (progress, tables, markdown with images that render
in the UI), plots and their atomic files, one module per flow. Flow modules call these; nothing
here computes a result a flow returns.
"""
