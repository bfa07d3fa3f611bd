package fanout

import "github.com/pubmesh/pubmesh/discovery"

// Registry is the cluster's registry in etcd as the client reads it: the
// gateway registers itself there and lists the other gateways.
func (c *Client) Registry() *discovery.Registry { return c.reg }
