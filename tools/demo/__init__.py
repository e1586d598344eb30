"""The README's demo: a simulated shop (`shop`), the raw objects the ingest Lambda writes for it
(`traffic`), and the run that loads an hour of them against local servers (`run`)."""
