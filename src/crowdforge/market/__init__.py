"""Models as learnware: specifications, search, reuse and packages."""
