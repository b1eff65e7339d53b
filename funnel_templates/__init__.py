"""The library of ready-made niche sales funnels (data) with its schema and loader."""
