"""PubMed Central access: buckets (HTTP or local), article metadata, licence policy, JATS parsing."""
