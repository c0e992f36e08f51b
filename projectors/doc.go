// Package projectors is readside's projection runtime: the Projection
// interface users implement, the Worker that runs a fleet member (leases,
// segment runners, retries, dead letters, metrics), and one subpackage per
// shipped projection. What operators read about the fleet (status, lag
// metrics) is in package observe; what they do to it (reset, rebuild,
// dead-letter retry, pruning, repair) is in package control.
package projectors
