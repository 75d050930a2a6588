"""Operations: Prometheus metrics, the health probes, the JSON log and stop signals."""
