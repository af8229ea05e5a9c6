"""`bridgeflow plan`: what every stage instance of a run will compute, and how long and how much disk it will take."""
