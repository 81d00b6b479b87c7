"""Test helpers that run as real processes (origin servers, helper peers)."""
