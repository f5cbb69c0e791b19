package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresRepository is a ProductRepository over one PostgreSQL table.
type PostgresRepository struct {
	pool  *pgxpool.Pool
	table string // quoted identifier, safe to put in SQL text
}

// NewPostgresRepository returns a repository over table (created by Migrate)
// through pool, which the caller owns and closes.
func NewPostgresRepository(pool *pgxpool.Pool, table string) *PostgresRepository {
	return &PostgresRepository{pool: pool, table: pgx.Identifier{table}.Sanitize()}
}

// Migrate creates the table if it does not exist. Instances may start
// together: CREATE TABLE IF NOT EXISTS is not safe against itself (two
// sessions can both see no table and the second fails on a unique index of
// the catalog), so it runs under a transaction-scoped advisory lock keyed by
// the table name.
func (r *PostgresRepository) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "tiercache-catalog:"+r.table); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+r.table+` (
	id          bigint      PRIMARY KEY CHECK (id > 0),
	name        text        NOT NULL,
	price_cents bigint      NOT NULL CHECK (price_cents >= 0),
	updated_at  timestamptz NOT NULL DEFAULT now()
)`)
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog: creating table %s: %w", r.table, err)
	}
	return nil
}

// Table returns the schema and the name of the table the repository
// reads and writes, as PostgreSQL resolves the name given to
// NewPostgresRepository on the pool's search_path: the schema is the
// connection's, not necessarily public. The table must exist (Migrate).
// The commit-log follower is pointed at this table, so that it follows the
// rows the repository serves and not a table of the same name in another
// schema.
func (r *PostgresRepository) Table(ctx context.Context) (schema, name string, err error) {
	err = r.pool.QueryRow(ctx, `SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1::regclass`, r.table).Scan(&schema, &name)
	if err != nil {
		return "", "", fmt.Errorf("catalog: resolving table %s on the search_path: %w", r.table, err)
	}
	return schema, name, nil
}

// Seed inserts ps, leaving the products that already exist as they are,
// in one round trip.
func (r *PostgresRepository) Seed(ctx context.Context, ps ...Product) error {
	var b pgx.Batch
	for _, p := range ps {
		b.Queue(`INSERT INTO `+r.table+` (id, name, price_cents) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING`, p.ID, p.Name, p.PriceCents)
	}
	if err := r.pool.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("catalog: seeding %s: %w", r.table, err)
	}
	return nil
}

// Get implements ProductRepository.
func (r *PostgresRepository) Get(ctx context.Context, id int64) (Product, error) {
	var p Product
	err := r.pool.QueryRow(ctx,
		`SELECT id, name, price_cents, updated_at FROM `+r.table+` WHERE id = $1`, id,
	).Scan(&p.ID, &p.Name, &p.PriceCents, &p.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Product{}, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	if err != nil {
		return Product{}, fmt.Errorf("catalog: get product %d: %w", id, err)
	}
	p.UpdatedAt = p.UpdatedAt.UTC()
	return p, nil
}

// GetMany implements ProductRepository with one query.
func (r *PostgresRepository) GetMany(ctx context.Context, ids []int64) (map[int64]Product, error) {
	rows, err := r.pool.Query(ctx,
		`SELECT id, name, price_cents, updated_at FROM `+r.table+` WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("catalog: get %d products: %w", len(ids), err)
	}
	out := make(map[int64]Product, len(ids))
	var p Product
	_, err = pgx.ForEachRow(rows, []any{&p.ID, &p.Name, &p.PriceCents, &p.UpdatedAt}, func() error {
		p.UpdatedAt = p.UpdatedAt.UTC()
		out[p.ID] = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: get %d products: %w", len(ids), err)
	}
	return out, nil
}

// Put implements ProductRepository with one upsert. xmax = 0 holds for a row
// version that no transaction has updated yet, which tells an insert from an
// update of an existing row.
//
// updated_at is the row version the cache orders write-through Sets by, so
// an update sets it after taking the row lock, above the version it
// replaces: two concurrent Puts of one product get versions in their commit
// order. (now() is the transaction's start: the later commit could carry the
// older version, and its Set would be refused.)
func (r *PostgresRepository) Put(ctx context.Context, p Product) (Product, bool, error) {
	if err := p.Validate(); err != nil {
		return Product{}, false, err
	}
	var saved Product
	var created bool
	err := r.pool.QueryRow(ctx, `INSERT INTO `+r.table+` AS t (id, name, price_cents, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (id) DO UPDATE
	SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents,
		updated_at = greatest(clock_timestamp(), t.updated_at + interval '1 microsecond')
RETURNING t.id, t.name, t.price_cents, t.updated_at, (t.xmax = 0)`,
		p.ID, p.Name, p.PriceCents,
	).Scan(&saved.ID, &saved.Name, &saved.PriceCents, &saved.UpdatedAt, &created)
	if err != nil {
		return Product{}, false, fmt.Errorf("catalog: put product %d: %w", p.ID, err)
	}
	saved.UpdatedAt = saved.UpdatedAt.UTC()
	return saved, created, nil
}
