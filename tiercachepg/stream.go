package tiercachepg

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tiercache/tiercache"
)

// The stream side of a run. One goroutine owns the replication connection:
// it reads pgoutput messages, groups each transaction's changes, maps them
// (Options.Map) and queues the committed transaction for the apply side
// (apply.go), which invalidates and advances the confirmed position. The
// stream goroutine reports that position to the server, periodically and
// whenever the server asks, also while the queue is full and it has
// stopped reading: so an outage of the cache holds the slot's position
// (the server keeps the WAL) without the server dropping the connection.

// ackStatusEvery is the least time between two status updates sent because
// the confirmed position moved (periodic ones go out every StatusInterval).
const ackStatusEvery = 100 * time.Millisecond

// run is the state of one call of Run, shared by its goroutines.
type run struct {
	f   *Follower
	cfg *config
	log *slog.Logger

	// pgVersion is the server's version number, read by the first setup
	// check; pub is the publication's state at its last check (see
	// pubState), which the lag poll's recheck compares with.
	pgVersion int
	pubMu     sync.Mutex
	pub       *pubState

	q    chan *txn     // committed transactions, in commit order
	kick chan struct{} // tells apply that idle moved

	// lastEnd is the end of the last transaction queued: where a new
	// stream of this run resumes (what is queued will be invalidated
	// before anything after it is confirmed). Stream goroutine only.
	lastEnd  LSN
	enqueued uint64 // transactions queued; stream goroutine only

	// versionWarned is when the last warning about a Map that returned a
	// Version went out, and versionsIgnored how many were ignored since:
	// the warning is rate-limited to one per versionWarnEvery. Stream
	// goroutine only.
	versionWarned   time.Time
	versionsIgnored int

	// idle is a position the stream reached with no transaction open, and
	// the number of transactions queued before it: once apply has
	// invalidated that many, it may confirm the position (a keepalive's
	// WAL end is past every commit sent before it).
	mu      sync.Mutex
	idlePos LSN
	idleSeq uint64
}

// txn is one committed transaction, mapped.
type txn struct {
	seq        uint64 // 1 for the first transaction queued by this run
	commitLSN  LSN
	endLSN     LSN
	commitTime time.Time
	xid        uint32
	keys, tags []string
	changes    int
	dead       []deadChange
}

// deadChange is a change Map failed on, for the dead-letter policy.
type deadChange struct {
	c   Change
	err error
}

func newRun(f *Follower) *run {
	return &run{
		f:    f,
		cfg:  f.cfg,
		log:  f.cfg.Logger,
		q:    make(chan *txn, f.cfg.MaxPending),
		kick: make(chan struct{}, 1),
	}
}

// stream connects and streams until ctx ends, reconnecting with backoff;
// it returns nil when ctx ends and an error that cannot be retried.
func (r *run) stream(ctx context.Context) error {
	b := newBackoff(r.cfg.MaxBackoff)
	for {
		streamed, err := r.streamOnce(ctx)
		r.f.c.streaming.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if ferr := fatal(err); ferr != nil {
			r.log.Error("tiercachepg: cannot follow the slot", "slot", r.cfg.Slot, "err", ferr)
			return ferr
		}
		r.f.c.streamErr.Add(1)
		if streamed {
			b.reset()
		}
		wait := b.next()
		r.log.Warn("tiercachepg: replication stream failed; reconnecting", "slot", r.cfg.Slot, "err", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// streamOnce sets up, connects and streams until an error; streamed
// reports that streaming had started.
func (r *run) streamOnce(ctx context.Context) (streamed bool, err error) {
	if err := r.setup(ctx); err != nil {
		return false, err
	}
	conn, err := pgconn.ConnectConfig(ctx, r.f.replConn)
	if err != nil {
		return false, connectErr(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return false, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	advance(&r.f.c.serverEnd, uint64(sys.XLogPos))
	interval, err := r.statusInterval(ctx, conn)
	if err != nil {
		return false, err
	}
	start := max(LSN(r.f.c.confirmed.Load()), r.lastEnd)
	err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + r.cfg.Publication + "'"},
	})
	if err != nil {
		if isPgCode(err, "42704") { // undefined_object: the slot was dropped since setup
			return false, fmt.Errorf("%w: START_REPLICATION: %w", ErrSlotNotFound, err)
		}
		return false, fmt.Errorf("START_REPLICATION: %w", err)
	}
	// From now on a missing slot is never created again (setupSlot): it
	// was dropped under this follower, and a new one would start after
	// the changes committed meanwhile.
	r.f.streamed.Store(true)
	r.f.c.connects.Add(1)
	r.f.c.streaming.Store(true)
	r.log.Info("tiercachepg: streaming", "slot", r.cfg.Slot, "from", start, "timeline", sys.Timeline, "database", sys.DBName)
	return true, r.receive(ctx, conn, interval)
}

// statusInterval is Options.StatusInterval, shortened to a third of the
// server's wal_sender_timeout so that the server never gives up on us.
func (r *run) statusInterval(ctx context.Context, conn *pgconn.PgConn) (time.Duration, error) {
	res, err := conn.Exec(ctx, "SHOW wal_sender_timeout").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("SHOW wal_sender_timeout: %w", err)
	}
	d := r.cfg.StatusInterval
	if len(res) == 1 && len(res[0].Rows) == 1 && len(res[0].Rows[0]) == 1 {
		if t, ok := parsePGDuration(string(res[0].Rows[0][0])); ok && t > 0 {
			d = min(d, t/3)
		}
	}
	return max(d, 10*time.Millisecond), nil
}

// parsePGDuration parses a time setting as SHOW prints it ("60s", "1min",
// "500ms", "0"; no unit is milliseconds).
func parsePGDuration(s string) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	units := map[string]time.Duration{
		"": time.Millisecond, "us": time.Microsecond, "ms": time.Millisecond, "s": time.Second,
		"min": time.Minute, "h": time.Hour, "d": 24 * time.Hour,
	}
	u, ok := units[unit]
	if !ok || n > int64(1<<62)/int64(u) {
		return 0, false
	}
	return time.Duration(n) * u, true
}

// receive reads the stream until an error or the end of ctx (nil).
func (r *run) receive(ctx context.Context, conn *pgconn.PgConn, interval time.Duration) error {
	s := &streamState{conn: conn, rels: make(map[uint32]*relation)}
	nextStatus := time.Now() // one at once: it also asks for the server's position
	for {
		now := time.Now()
		switch {
		case !now.Before(nextStatus):
			if err := r.sendStatus(s, true); err != nil {
				return err
			}
			nextStatus = now.Add(interval)
		case LSN(r.f.c.confirmed.Load()) > s.sentFlush && now.Sub(s.sentAt) >= ackStatusEvery:
			if err := r.sendStatus(s, false); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			reply, err := r.copyData(ctx, s, msg.Data, interval)
			if err != nil || ctx.Err() != nil {
				return err
			}
			if reply {
				nextStatus = time.Time{}
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyDone:
			return errors.New("the server ended the replication stream")
		}
	}
}

// streamState is one stream's state, owned by the stream goroutine.
type streamState struct {
	conn      *pgconn.PgConn
	rels      map[uint32]*relation
	cur       *txn // the transaction being read, nil between transactions
	sentFlush LSN
	sentAt    time.Time
}

// sendStatus reports the confirmed position (flushed and applied) and
// the received one (written). Until something is confirmed it reports
// nothing (zeros), which the server ignores.
func (r *run) sendStatus(s *streamState, reply bool) error {
	flush := LSN(r.f.c.confirmed.Load())
	write := max(LSN(r.f.c.received.Load()), flush)
	if flush == 0 {
		write = 0 // pglogrepl would report a zero flush position as write
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: write,
		WALFlushPosition: flush,
		WALApplyPosition: flush,
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("standby status update: %w", err)
	}
	s.sentFlush, s.sentAt = flush, time.Now()
	return nil
}

// copyData handles one CopyData message of the stream; reply reports a
// keepalive that asks for an answer at once.
func (r *run) copyData(ctx context.Context, s *streamState, data []byte, interval time.Duration) (reply bool, err error) {
	if len(data) == 0 {
		return false, errors.New("empty CopyData message")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return false, err
		}
		advance(&r.f.c.serverEnd, uint64(k.ServerWALEnd))
		if s.cur == nil {
			r.setIdle(k.ServerWALEnd)
		}
		return k.ReplyRequested, nil
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return false, err
		}
		advance(&r.f.c.serverEnd, uint64(x.ServerWALEnd))
		return false, r.message(ctx, s, x.WALData, interval)
	}
	return false, nil
}

// setIdle records a position reached between transactions and tells
// apply, which confirms it once everything queued before is invalidated.
func (r *run) setIdle(pos LSN) {
	r.mu.Lock()
	if pos > r.idlePos {
		r.idlePos, r.idleSeq = pos, r.enqueued
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// message handles one pgoutput message.
func (r *run) message(ctx context.Context, s *streamState, data []byte, interval time.Duration) error {
	m, err := parseMessage(data)
	if err != nil {
		if s.cur != nil && isChange(data[0]) {
			// A change that does not decode: its transaction goes on, and
			// the change goes to the dead-letter policy like any other
			// that cannot be mapped, instead of stopping the stream on it
			// for good (it would come again after every reconnect).
			r.dead(s.cur, Change{Op: opOf(data[0]), CommitLSN: s.cur.commitLSN, CommitTime: s.cur.commitTime, Xid: s.cur.xid},
				fmt.Errorf("%w: %w", ErrUnmapped, err))
			return nil
		}
		if errors.Is(err, errUnknownMessage) {
			r.log.Debug("tiercachepg: skipping a pgoutput message", "type", string(data[0]))
			return nil
		}
		return err
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		s.rels[m.RelationID] = newRelation(m, r.cfg.follow[table{schema: m.Namespace, name: m.RelationName}])
	case *pglogrepl.BeginMessage:
		if s.cur != nil {
			return errors.New("pgoutput: BEGIN inside a transaction")
		}
		s.cur = &txn{commitLSN: m.FinalLSN, commitTime: m.CommitTime, xid: m.Xid}
	case *pglogrepl.InsertMessage:
		return r.change(s, m.RelationID, OpInsert, m.Tuple, nil, 0)
	case *pglogrepl.UpdateMessage:
		return r.change(s, m.RelationID, OpUpdate, m.NewTuple, m.OldTuple, m.OldTupleType)
	case *pglogrepl.DeleteMessage:
		return r.change(s, m.RelationID, OpDelete, nil, m.OldTuple, m.OldTupleType)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if err := r.change(s, id, OpTruncate, nil, nil, 0); err != nil {
				return err
			}
		}
	case *pglogrepl.CommitMessage:
		t := s.cur
		if t == nil {
			return errors.New("pgoutput: COMMIT outside a transaction")
		}
		s.cur = nil
		t.endLSN, t.commitTime = m.TransactionEndLSN, m.CommitTime
		return r.enqueue(ctx, s, t, interval)
	}
	return nil
}

// change maps one row change into the open transaction.
func (r *run) change(s *streamState, relID uint32, op Op, newT, oldT *pglogrepl.TupleData, oldKind uint8) error {
	t := s.cur
	if t == nil {
		return fmt.Errorf("pgoutput: %s outside a transaction", op)
	}
	c := Change{Op: op, CommitLSN: t.commitLSN, CommitTime: t.commitTime, Xid: t.xid}
	rel := s.rels[relID]
	if rel == nil {
		r.dead(t, c, fmt.Errorf("%w: %s of relation %d, which the stream has not described", ErrUnmapped, op, relID))
		return nil
	}
	c.Schema, c.Table = rel.schema, rel.table
	if !rel.followed {
		r.f.c.ignored.Add(1)
		return nil
	}
	t.changes++
	var err1, err2 error
	c.New, err1 = rel.row(newT, false)
	c.OldKeyOnly = oldT != nil && oldKind == pglogrepl.UpdateMessageTupleTypeKey
	c.Old, err2 = rel.row(oldT, c.OldKeyOnly)
	if err := errors.Join(err1, err2); err != nil {
		r.dead(t, c, err)
		return nil
	}
	inv, err := r.mapChange(c)
	if inv.Version != 0 {
		r.versionIgnored(c, inv.Version)
	}
	if verr := t.add(inv); verr != nil {
		err = errors.Join(err, verr)
	}
	if err != nil {
		r.dead(t, c, err)
	}
	return nil
}

// mapChange calls Map, turning a panic into an error.
func (r *run) mapChange(c Change) (inv tiercache.Invalidation, err error) {
	defer func() {
		if p := recover(); p != nil {
			inv, err = tiercache.Invalidation{}, fmt.Errorf("%w: Map panicked: %v", ErrUnmapped, p)
		}
	}()
	return r.cfg.Map(c)
}

// versionWarnEvery is the least time between two warnings about a Map
// that returned a Version.
const versionWarnEvery = time.Minute

// versionIgnored warns, at most once per versionWarnEvery, that Map
// returned an Invalidation with a Version, which the follower drops: its
// invalidations are unversioned (see [MapFunc]).
func (r *run) versionIgnored(c Change, v uint64) {
	r.versionsIgnored++
	if now := time.Now(); r.versionWarned.IsZero() || now.Sub(r.versionWarned) >= versionWarnEvery {
		r.log.Warn("tiercachepg: Map returned an Invalidation with a Version; the follower's invalidations are unversioned and the Version is ignored",
			"table", c.Schema+"."+c.Table, "version", v, "ignored", r.versionsIgnored)
		r.versionWarned, r.versionsIgnored = now, 0
	}
}

// dead records a change that could not be mapped, for the dead-letter
// policy, which apply calls before the transaction's invalidation.
func (r *run) dead(t *txn, c Change, err error) {
	r.f.c.unmapped.Add(1)
	var tbl string
	if c.Table != "" {
		tbl = c.Schema + "." + c.Table
	}
	r.f.obs.Unmapped(tbl)
	r.log.Error("tiercachepg: change not mapped; handing it to the dead-letter policy",
		"table", c.Schema+"."+c.Table, "op", c.Op.String(), "commit_lsn", c.CommitLSN, "xid", c.Xid, "err", err)
	t.dead = append(t.dead, deadChange{c: c, err: err})
}

// add adds inv's keys and tags to the transaction, leaving out and
// reporting those tiercache would reject (an empty key or tag, a tag over
// 255 bytes or starting with '}'): a batch with one of them would fail on
// every retry. More
// than 64 distinct tags, which one tiercache call refuses, are reported
// too (the change goes to the dead-letter policy) but kept: apply splits
// them over calls of at most MaxBatchTags, so invalidating them is safe
// and leaves nothing stale. inv.Version is not kept (see [MapFunc]).
func (t *txn) add(inv tiercache.Invalidation) error {
	var errs []error
	if n := distinct(inv.Tags); n > maxTags {
		errs = append(errs, fmt.Errorf("%w: %d tags, at most %d", ErrUnmapped, n, maxTags))
	}
	for _, k := range inv.Keys {
		if k == "" {
			errs = append(errs, fmt.Errorf("%w: empty key", ErrUnmapped))
			continue
		}
		t.keys = append(t.keys, k)
	}
	for _, tag := range inv.Tags {
		if !validTag(tag) {
			errs = append(errs, fmt.Errorf("%w: tag %q: want 1 to %d bytes, not starting with '}'", ErrUnmapped, tag, maxTagLen))
			continue
		}
		t.tags = append(t.tags, tag)
	}
	return errors.Join(errs...)
}

// distinct counts the distinct strings of vs.
func distinct(vs []string) int {
	if len(vs) <= maxTags {
		return len(vs) // enough to know it is within the limit
	}
	seen := make(map[string]struct{}, len(vs))
	for _, v := range vs {
		seen[v] = struct{}{}
	}
	return len(seen)
}

// connectErr classifies an error of connecting. 42704 (undefined_object)
// at connect is an unknown server setting in the DSN, which no retry
// cures; it is not a missing slot (fatal classifies the other codes).
func connectErr(err error) error {
	if isPgCode(err, "42704") {
		return fmt.Errorf("%w: dsn: a parameter the server does not know: %w", ErrInvalidOption, err)
	}
	return err
}

// enqueue hands a committed transaction to apply. When the queue is full
// it waits, reporting its position to the server meanwhile.
func (r *run) enqueue(ctx context.Context, s *streamState, t *txn, interval time.Duration) error {
	t.seq = r.enqueued + 1
	select {
	case r.q <- t:
	default:
		tick := time.NewTicker(max(interval/2, 10*time.Millisecond))
		defer tick.Stop()
		r.f.c.blocked.Store(true)
		defer r.f.c.blocked.Store(false)
	wait:
		for {
			select {
			case r.q <- t:
				break wait
			case <-tick.C:
				if err := r.sendStatus(s, false); err != nil {
					return err
				}
			case <-ctx.Done():
				return nil
			}
		}
	}
	r.f.c.pending.Add(1)
	r.mu.Lock()
	r.enqueued = t.seq
	r.mu.Unlock()
	r.lastEnd = t.endLSN
	advance(&r.f.c.received, uint64(t.endLSN))
	return nil
}

// errUnknownMessage marks a pgoutput message type the follower does not
// know (none in protocol version 1 today).
var errUnknownMessage = errors.New("unknown pgoutput message type")

// parseMessage decodes a pgoutput message. pglogrepl trusts the server's
// lengths; a malformed message is an error here, never a panic.
func parseMessage(data []byte) (m pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("empty pgoutput message")
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit, pglogrepl.MessageTypeOrigin,
		pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeType, pglogrepl.MessageTypeInsert,
		pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate,
		pglogrepl.MessageTypeMessage:
	default:
		return nil, fmt.Errorf("%w %q", errUnknownMessage, data[0])
	}
	if err := checkLengths(data); err != nil {
		return nil, fmt.Errorf("malformed pgoutput %q message of %d bytes: %w", data[0], len(data), err)
	}
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("malformed pgoutput %q message of %d bytes: %v", data[0], len(data), p)
		}
	}()
	return pglogrepl.Parse(data)
}

// checkLengths checks the lengths that pglogrepl's decoders allocate by
// before reading (a TRUNCATE's relation count, a tuple column's length):
// it would allocate gigabytes for a few bad bytes.
func checkLengths(data []byte) error {
	body := data[1:]
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeTruncate:
		if len(body) >= 5 {
			if n := binary.BigEndian.Uint32(body); uint64(n) > uint64(len(body)-5)/4 {
				return fmt.Errorf("%d relations", n)
			}
		}
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete:
		off := 4 // relation id
		for off < len(body) {
			switch body[off] {
			case 'N', 'K', 'O':
				end, err := tupleEnd(body, off+1)
				if err != nil {
					return err
				}
				off = end
			default:
				return fmt.Errorf("tuple type %q", body[off])
			}
		}
	}
	return nil
}

// tupleEnd returns the offset just past the TupleData at b[off:].
func tupleEnd(b []byte, off int) (int, error) {
	if off > len(b)-2 {
		return 0, errors.New("truncated tuple")
	}
	n := int(binary.BigEndian.Uint16(b[off:]))
	off += 2
	for range n {
		if off >= len(b) {
			return 0, errors.New("truncated tuple")
		}
		kind := b[off]
		off++
		if kind == pglogrepl.TupleDataTypeText || kind == pglogrepl.TupleDataTypeBinary {
			if off > len(b)-4 {
				return 0, errors.New("truncated column")
			}
			l := binary.BigEndian.Uint32(b[off:])
			off += 4
			if uint64(l) > uint64(len(b)-off) {
				return 0, fmt.Errorf("column of %d bytes", l)
			}
			off += int(l)
		}
	}
	return off, nil
}

func isChange(b byte) bool { return opOf(b) != 0 }

func opOf(b byte) Op {
	switch pglogrepl.MessageType(b) {
	case pglogrepl.MessageTypeInsert:
		return OpInsert
	case pglogrepl.MessageTypeUpdate:
		return OpUpdate
	case pglogrepl.MessageTypeDelete:
		return OpDelete
	case pglogrepl.MessageTypeTruncate:
		return OpTruncate
	}
	return 0
}

// fatal returns err, classified, if it cannot be cured by retrying, and
// nil otherwise.
func fatal(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range []error{ErrSlotNotFound, ErrSlotUnusable, ErrPublication, ErrPermission, ErrInvalidOption} {
		if errors.Is(err, s) {
			return err
		}
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch {
	case pgErr.Code == "42501" || strings.HasPrefix(pgErr.Code, "28"): // insufficient_privilege, invalid authorization
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case pgErr.Code == "55000": // object_not_in_prerequisite_state: slot invalidated, wal_level
		return fmt.Errorf("%w: %w", ErrSlotUnusable, err)
	case pgErr.Code == "3D000": // invalid_catalog_name: no such database
		return fmt.Errorf("%w: %w", ErrInvalidOption, err)
	case pgErr.Code == "42704" && strings.Contains(pgErr.Message, "publication"):
		// Mid-stream: the slot decodes its changes under the catalog as it
		// was when they were written, so a publication dropped under it
		// stays missing for them even once re-created: no retry helps.
		return fmt.Errorf("%w: %w (a publication dropped under a live slot: create a new slot and Clear the cache)", ErrPublication, err)
	}
	return nil
}

// backoff doubles from minBackoff up to a maximum.
type backoff struct{ cur, max time.Duration }

func newBackoff(maxWait time.Duration) *backoff { return &backoff{max: maxWait} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = min(minBackoff, b.max)
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
