"""Prefect flows: orchestration only (which stage when, retries, schedules)."""
