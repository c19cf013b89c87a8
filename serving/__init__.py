"""headprune's serving side: the embedded Triton server, clients, benchmarks, reports and the CLI."""
