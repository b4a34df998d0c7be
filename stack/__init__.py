"""Process-level plumbing: settings and the embedded services behind `credits up`."""
