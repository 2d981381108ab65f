//! PostgreSQL clean-up for the test binaries that have sqlx (not the Envoy
//! module's, which shares `common` but not this file).

/// SQL run against a PostgreSQL URL when this is dropped, also when the test
/// failed; on a thread and runtime of its own (the test's may be gone), and
/// errors ignored: for databases and roles a test made.
pub struct SqlOnDrop {
    pub url: String,
    pub statements: Vec<String>,
}

impl Drop for SqlOnDrop {
    fn drop(&mut self) {
        use sqlx::Connection;
        let url = std::mem::take(&mut self.url);
        let statements = std::mem::take(&mut self.statements);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                for stmt in statements {
                    let _ = sqlx::query(&stmt).execute(&mut conn).await;
                }
                Some(())
            })
        })
        .join();
    }
}
