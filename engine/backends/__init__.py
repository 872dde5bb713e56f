"""Step executors behind one interface (see `analytic.AnalyticBackend` for the contract)."""
