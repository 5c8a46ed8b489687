"""Thin Spark code: sessions, Arrow <-> numpy, and the Spark implementation of the assigner seam."""
