package fanout

// livePos is the client's position on one subscribed history channel: it
// covers what the client delivered there since the channel's first
// current subscription (the floor), and gives each delivered message its
// Position. A subscriber that came later was not owed the earlier
// messages, so the shared position is right for it too.
type livePos struct {
	since int64 // registry.subscribedSince when the position started
	pos   *position
}

// trackPosition gives m its position. It runs under the sequencer's
// lock, so messages are counted in delivery order.
func (c *Client) trackPosition(m *Message) {
	if m.pub == 0 || m.Pattern != "" {
		return
	}
	if _, ok := c.historyOf(m.Channel); !ok {
		return
	}
	since := c.subs.subscribedSince(m.Channel)
	if since == 0 {
		delete(c.livePos, m.Channel)
		return
	}
	lp := c.livePos[m.Channel]
	if lp == nil || lp.since != since {
		if len(c.livePos) >= maxLivePositions {
			c.pruneLivePositions()
		}
		lp = &livePos{since: since, pos: newPosition(since)}
		c.livePos[m.Channel] = lp
	}
	lp.pos.add(m.pub, m.seq, m.prev, m.PublishedAt.UnixNano())
	m.pos = lp.pos.encode()
}

// maxLivePositions bounds the table; positions of channels no longer
// subscribed are dropped first.
const maxLivePositions = 1 << 16

func (c *Client) pruneLivePositions() {
	for ch, lp := range c.livePos {
		if c.subs.subscribedSince(ch) != lp.since {
			delete(c.livePos, ch)
		}
	}
}
