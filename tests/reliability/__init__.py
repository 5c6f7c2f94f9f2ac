"""Reliability: bad input refused at the edge, faults injected into real daemons, nothing lost or doubled."""
