// Uses clients/elevation/client.d.ts as an app would; `tsc -p tests/clients`
// (run by tests/server/elevation.rs) fails when the types do not hold.
import {
  GRANT_NAME,
  ElevationError,
  createElevationClient,
  isElevationRequired,
  type ElevationClientOptions,
  type ElevationErrorCode,
  type SecurityKey,
} from '../../clients/elevation/client.js';

const options: ElevationClientOptions = {
  getAccessToken: async () => 'access-token',
  grantIn: 'cookie',
  cookie: { path: '/', sameSite: 'Lax', secure: true },
  origins: ['https://api.example.com'],
  autoElevate: true,
  onElevate: ({ expiresAt }) => console.log(expiresAt.toISOString()),
};
const elevation = createElevationClient(options);
const header: 'X-Elevation-Token' = GRANT_NAME;

export async function app(): Promise<string[]> {
  const added: { id: string; nickname: string | null } = await elevation.addSecurityKey({ nickname: 'YubiKey' });
  const keys: SecurityKey[] = await elevation.listSecurityKeys();
  await elevation.deleteSecurityKey(keys[0].id, { elevate: false });
  const { expiresAt }: { expiresAt: Date } = await elevation.elevate();
  const grant = elevation.grant;
  const until: number | undefined = grant?.expiresAt.getTime();
  const response: Response = await elevation.fetch('/api/notes', { method: 'POST', body: '{}' }, { elevate: false });
  const needs: boolean = isElevationRequired(response);
  elevation.clearGrant();
  try {
    await elevation.elevate();
  } catch (e) {
    if (e instanceof ElevationError) {
      const code: ElevationErrorCode = e.code;
      const status: number | undefined = e.status;
      const cause: string | undefined = e.server?.cause;
      return [code, String(status), String(cause), e.message];
    }
  }
  return [added.id, String(added.nickname), header, expiresAt.toISOString(), String(until), String(needs)];
}

// @ts-expect-error grantIn is 'header' or 'cookie'
createElevationClient({ grantIn: 'localStorage' });
// @ts-expect-error no such option
createElevationClient({ storage: 'memory' });
