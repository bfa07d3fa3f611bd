package bench

import "context"

// newGatewayTarget is row 7: pubmesh through the WebSocket gateway.
func newGatewayTarget(ctx context.Context, srv *servers, ee *etcdEnv, cfg Config, nodes int) (target, error) {
	return nil, errNoGateway
}
