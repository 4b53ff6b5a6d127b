"""Model definitions (torch). Imported only by training/export code, never by the services."""
