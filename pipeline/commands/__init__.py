"""One module per CLI verb; each has main(args, console) -> exit code."""
