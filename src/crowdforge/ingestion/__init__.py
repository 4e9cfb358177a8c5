"""Ingestion building blocks: streaming readers (``readers``) and personal-data checks (``privacy``)."""
