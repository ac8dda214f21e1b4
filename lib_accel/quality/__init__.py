"""Image quality measurements (differences between images)."""
