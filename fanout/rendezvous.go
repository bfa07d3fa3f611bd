package fanout

import "github.com/cespare/xxhash/v2"

// Rendezvous (highest random weight) hashing: a channel's home is the node
// with the highest score(channel, node). When a node joins or leaves, only
// the channels whose top node changed move: about 1/N of them.

func channelHash(channel string) uint64 { return xxhash.Sum64String(channel) }

func nodeSeed(id string) uint64 { return xxhash.Sum64String(id) }

// score mixes a channel hash with a node seed (the splitmix64 finalizer), so
// the per-node cost is a few multiplications, not a hash of the name.
func score(ch, seed uint64) uint64 {
	x := ch ^ seed
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// rank writes into dst the indexes of seeds in rendezvous order for ch:
// best first, with the entries for which last(i) is true moved behind the
// others (suspect nodes are tried last, not never).
func rank(dst []int, ch uint64, seeds []uint64, last func(int) bool) []int {
	dst = dst[:0]
	var scores [16]uint64
	sc := scores[:0]
	if len(seeds) > len(scores) {
		sc = make([]uint64, 0, len(seeds))
	}
	for i, s := range seeds {
		v := score(ch, s)
		if last != nil && last(i) {
			v >>= 1 // below every healthy node, order kept among suspects
		} else {
			v = v>>1 | 1<<63
		}
		// insertion sort: N is small
		j := len(dst)
		dst = append(dst, i)
		sc = append(sc, v)
		for j > 0 && sc[j-1] < v {
			dst[j], sc[j] = dst[j-1], sc[j-1]
			j--
		}
		dst[j], sc[j] = i, v
	}
	return dst
}
