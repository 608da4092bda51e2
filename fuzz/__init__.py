"""Fuzzing and fault campaigns for statetransfer (see fuzz/README.md)."""
