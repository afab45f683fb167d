"""Code-manager service: protocol sources, git, discovery, code bundles."""
