-- Grafana's PostgreSQL data source at connect and schema discovery.
--
-- Sources (grafana/grafana):
--   public/app/plugins/datasource/grafana-postgresql-datasource/postgresMetaQuery.ts
--     at 12f912ab8d010f4d95a4043a0efaa20fc4ca0100: getVersion, getTimescaleDBVersion,
--     showSchemas, showTables() and showTables('public'), getSchema('pages'),
--     with buildSchemaConstraint() written out.
--   pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine_pgx.go
--     at 0f630cbe81d348f9a1860f827de3cad3041c042f: every query above, and the
--     panels' queries, run through pgconn's Exec: the simple protocol.
--   pkg/tsdb/grafana-postgresql-datasource/macros.go
--     at 02ab314b81e2adc656bd7d08cc0533304a0037ff: a panel's
--     `SELECT $__time(window_start), page AS metric, n FROM pages WHERE $__timeFilter(window_start)`
--     as the macros expand it.
--   pkg/tsdb/grafana-postgresql-datasource/schema.go
--     at 043dd88a47944c35205994c4da317e100dc9b12e: querySchemas, queryTables
--     and queryColumns, run by pgx's pool.Query: the extended protocol with
--     $1, $2 bound.
--   The health check is pgx's Ping, `-- ping` (jackc/pgx pgconn/pgconn.go).
--
-- Directives (lines before a statement): `-- protocol: simple|extended`
-- holds until changed; `-- bind: [JSON]` are the values bound to $1..$n;
-- `-- expect: a, b` each must be a cell of the answer; `-- raw: TEXT` sends
-- TEXT itself. A statement ends at a line ending in `;`.

-- protocol: simple
-- raw: -- ping
;

-- expect: 1600
SELECT current_setting('server_version_num')::int/100 as version;

SELECT extversion FROM pg_extension WHERE extname = 'timescaledb';

-- expect: public
SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name;

-- expect: pages
SELECT
    CASE WHEN 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          ) THEN 0 ELSE 1 END, 1;

-- expect: pages
SELECT quote_ident(table_name) AS "table"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1;

-- expect: window_start, page, n, bigint, text, timestamp without time zone
SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('pages'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('pages'))[1]
          AND quote_ident(table_name) = (parse_ident('pages'))[2]
        ELSE quote_ident(table_name) = 'pages'
          AND 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      END;

-- expect: p0, p1
SELECT window_start AS "time", page AS metric, n FROM pages WHERE window_start BETWEEN '2020-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' ORDER BY 1;

-- protocol: extended
-- expect: public
SELECT schema_name FROM information_schema.schemata
		 WHERE schema_name NOT LIKE 'pg_%' AND schema_name != 'information_schema'
		 ORDER BY schema_name;

-- bind: ["public"]
-- expect: pages
SELECT table_name FROM information_schema.tables
		 WHERE table_schema = $1 AND table_type IN ('BASE TABLE', 'VIEW')
		 ORDER BY table_name;

-- bind: ["public", "pages"]
-- expect: window_start, page, n, int8, text, timestamp
SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale
		 FROM information_schema.columns
		 WHERE table_schema = $1 AND table_name = $2
		 ORDER BY ordinal_position;
