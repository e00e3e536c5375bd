"""Collecting run directories into tables, plots and significance tests."""
