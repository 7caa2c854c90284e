"""Coach service: athlete context and safe workout modifications for Polarize."""
