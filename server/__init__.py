"""The aggregator: drives federated rounds and averages client adapters."""
