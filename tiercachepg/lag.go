package tiercachepg

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// pollLag reads the slot's lag every LagInterval, on a plain session of
// its own (the replication connection is busy streaming, and may be down
// or blocked while the cache is unreachable, which is when the lag
// matters), and reports a lag above MaxLag. While the follower streams it
// also checks again what could change under the stream and hide changes
// (see recheck), and returns that ErrPublication.
func (r *run) pollLag(ctx context.Context) error {
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}
	}()
	tick := time.NewTicker(r.cfg.LagInterval)
	defer tick.Stop()
	for {
		conn = r.pollLagOnce(ctx, conn)
		if conn != nil && r.f.c.streaming.Load() {
			if err := r.recheck(ctx, conn); err != nil {
				r.log.Error("tiercachepg: cannot follow the slot", "slot", r.cfg.Slot, "err", err)
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// pollLagOnce reads the lag once; it returns the connection to use next
// time (nil after an error, to reconnect).
func (r *run) pollLagOnce(ctx context.Context, conn *pgconn.PgConn) *pgconn.PgConn {
	if conn == nil {
		var err error
		cctx, cancel := context.WithTimeout(ctx, r.cfg.LagInterval+5*time.Second)
		conn, err = pgconn.ConnectConfig(cctx, r.f.sqlConn)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("tiercachepg: cannot read the slot's lag", "slot", r.cfg.Slot, "err", err)
			}
			return nil
		}
	}
	qctx, cancel := context.WithTimeout(ctx, r.cfg.LagInterval+5*time.Second)
	rows, err := query(qctx, conn,
		"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
		r.cfg.Slot)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("tiercachepg: cannot read the slot's lag", "slot", r.cfg.Slot, "err", err)
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
		return nil
	}
	if len(rows) == 0 || rows[0][0] == "" {
		r.f.c.slotLag.Store(-1) // no slot (yet), or no confirmed position
		return conn
	}
	lag, err := strconv.ParseInt(rows[0][0], 10, 64)
	if err != nil {
		return conn
	}
	r.f.c.slotLag.Store(lag)
	exceeded := r.checkLag(lag)
	r.f.obs.SlotLag(lag, exceeded)
	return conn
}

// checkLag reports crossings of MaxLag: up (logged, counted, OnLag) and
// back down (logged, OnLag). It returns whether lag is above MaxLag.
func (r *run) checkLag(lag int64) (above bool) {
	limit := r.cfg.MaxLag
	if limit <= 0 {
		return false
	}
	above = lag > limit
	if r.f.c.lagExceeded.Swap(above) == above {
		return above
	}
	if above {
		r.f.c.lagAlarms.Add(1)
		r.log.Warn("tiercachepg: the replication slot is falling behind; the database keeps its WAL until it catches up",
			"slot", r.cfg.Slot, "lag_bytes", lag, "max_lag", limit)
	} else {
		r.log.Info("tiercachepg: the replication slot caught up", "slot", r.cfg.Slot, "lag_bytes", lag, "max_lag", limit)
	}
	if r.cfg.OnLag != nil {
		func() {
			defer func() {
				if p := recover(); p != nil {
					r.log.Error("tiercachepg: OnLag panicked", "panic", p)
				}
			}()
			r.cfg.OnLag(Lag{Bytes: lag, Limit: limit, Exceeded: above})
		}()
	}
	return above
}
